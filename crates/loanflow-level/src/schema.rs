// @generated automatically by Diesel CLI.

diesel::table! {
    waiting (reference) {
        reference -> Text,
        work -> Jsonb,
        waiting_since -> Timestamptz,
    }
}
