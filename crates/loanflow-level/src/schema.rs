// @generated automatically by Diesel CLI.

diesel::table! {
    processed_messages (message_id) {
        message_id -> Uuid,
        processed_at -> Timestamptz,
    }
}

diesel::table! {
    waiting (reference) {
        reference -> Text,
        work -> Jsonb,
        waiting_since -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(processed_messages, waiting,);
