// @generated automatically by Diesel CLI.

diesel::table! {
    internal_reasons (reference) {
        reference -> Text,
        reason -> Text,
        decided_at -> Timestamptz,
    }
}

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
        traceparent -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(internal_reasons, processed_messages, waiting,);
