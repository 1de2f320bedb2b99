// @generated automatically by Diesel CLI.

diesel::table! {
    application_status (reference) {
        reference -> Text,
        status -> Text,
        current_level -> Nullable<Text>,
        seq -> Int4,
        offer -> Nullable<Jsonb>,
        score -> Nullable<Int4>,
        updated_at -> Timestamptz,
        withdrawal_requested_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    applications (reference) {
        reference -> Text,
        application -> Jsonb,
        submitted_at -> Timestamptz,
    }
}

diesel::table! {
    approvals_given (reference, level, approver) {
        reference -> Text,
        level -> Text,
        approver -> Text,
        reason -> Text,
        decided_at -> Timestamptz,
    }
}

diesel::table! {
    approver_sessions (id_sha256) {
        id_sha256 -> Bytea,
        approver -> Text,
        csrf -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    audit_trail (id) {
        id -> Int8,
        at -> Timestamptz,
        actor -> Text,
        action -> Text,
        reference -> Nullable<Text>,
        detail -> Text,
        prev_hash -> Bytea,
        hash -> Bytea,
    }
}

diesel::table! {
    awaiting (reference) {
        reference -> Text,
        level -> Text,
        since -> Timestamptz,
        escalated_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    claims (reference) {
        reference -> Text,
        approver -> Text,
        claimed_until -> Timestamptz,
    }
}

diesel::table! {
    decisions (reference, seq) {
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
        traceparent -> Nullable<Text>,
    }
}

diesel::table! {
    withdrawals (reference) {
        reference -> Text,
        reason -> Nullable<Text>,
        requested_at -> Timestamptz,
    }
}

diesel::joinable!(application_status -> applications (reference));
diesel::joinable!(approvals_given -> applications (reference));
diesel::joinable!(awaiting -> applications (reference));
diesel::joinable!(claims -> applications (reference));
diesel::joinable!(decisions -> applications (reference));
diesel::joinable!(idempotency_keys -> applications (reference));
diesel::joinable!(withdrawals -> applications (reference));

diesel::allow_tables_to_appear_in_same_query!(
    application_status,
    applications,
    approvals_given,
    approver_sessions,
    audit_trail,
    awaiting,
    claims,
    decisions,
    idempotency_keys,
    outbox,
    withdrawals,
);
