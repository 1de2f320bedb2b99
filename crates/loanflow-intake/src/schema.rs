// @generated automatically by Diesel CLI.

diesel::table! {
    applications (reference) {
        reference -> Text,
        application -> Jsonb,
        status -> Text,
        current_level -> Nullable<Text>,
        seq -> Int4,
        offer -> Nullable<Jsonb>,
        submitted_at -> Timestamptz,
        updated_at -> Timestamptz,
        score -> Nullable<Int4>,
    }
}

diesel::table! {
    decisions (reference, level) {
        reference -> Text,
        level -> Text,
        seq -> Int4,
        outcome -> Text,
        reason -> Text,
        decided_by -> Text,
        decided_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (key) {
        key -> Text,
        reference -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        message_id -> Uuid,
        reference -> Text,
        exchange -> Text,
        routing_key -> Text,
        payload -> Bytea,
        created_at -> Timestamptz,
        claimed_until -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(decisions -> applications (reference));
diesel::joinable!(idempotency_keys -> applications (reference));

diesel::allow_tables_to_appear_in_same_query!(applications, decisions, idempotency_keys, outbox,);
