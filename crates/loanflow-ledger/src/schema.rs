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
