-- Reconciliation: total amount in the fact equals total unit_sales in the raw extract.
with

raw_lines as (
    select * from {{ source('raw', 'order_details') }}
),

facts as (
    select * from {{ ref('fct_transactions') }}
),

raw_total as (
    select coalesce(sum(unit_sales), 0) as total from raw_lines
),

fact_total as (
    select coalesce(sum(amount), 0) as total from facts
),

final as (
    select
        raw_total.total as raw_unit_sales,
        fact_total.total as fact_amount
    from raw_total
    cross join fact_total
    where raw_total.total <> fact_total.total
)

select * from final
