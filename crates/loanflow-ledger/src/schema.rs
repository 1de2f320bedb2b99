// @generated automatically by Diesel CLI.

diesel::table! {
    loans (reference) {
        reference -> Text,
        amount -> Numeric,
        currency -> Text,
        annual_rate -> Numeric,
        term_months -> Int4,
        monthly_payment -> Numeric,
        decisions -> Jsonb,
        submitted_at -> Timestamptz,
        booked_at -> Timestamptz,
    }
}

diesel::table! {
    processed_messages (message_id) {
        message_id -> Uuid,
        processed_at -> Timestamptz,
    }
}

diesel::table! {
    withdrawals (reference) {
        reference -> Text,
        reason -> Nullable<Text>,
        requested_at -> Timestamptz,
        recorded_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(loans, processed_messages, withdrawals,);
