DROP TABLE internal_reasons;
