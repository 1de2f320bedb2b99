DROP TABLE waiting;
