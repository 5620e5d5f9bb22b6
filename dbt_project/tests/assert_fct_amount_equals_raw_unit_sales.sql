-- Reconciliation: total amount in the fact equals the total straight from the raw tables: the
-- extract's unit_sales and the shop's mirrored amounts (the shop's line wins for the same id,
-- deleted lines left out), without the lines of orders cancelled in the shop.
-- After appends only the lines above the last whole-table check are summed, on both sides (macro
-- fct_transactions_unchecked_rows, on the line id: extract and shop lines alike); any other load
-- sums every line.
with

extract_lines as (
    select * from {{ source('raw', 'order_details') }}
    where {{ fct_transactions_unchecked_rows('order_detail_id') }}
),

shop_lines as (
    select * from {{ source('raw_store', 'shop_orderline') }}
    where {{ fct_transactions_unchecked_rows('id') }}
),

shop_orders as (
    select * from {{ source('raw_store', 'shop_order') }}
),

facts as (
    select * from {{ ref('fct_transactions') }}
    where {{ fct_transactions_unchecked_rows() }}
),

raw_lines as (
    select
        order_id,
        amount
    from shop_lines
    where _deleted_at is null
    union all
    select
        order_id,
        unit_sales as amount
    from extract_lines
    where not exists (
        select 1 from shop_lines
        where shop_lines.id = extract_lines.order_detail_id
    )
),

raw_total as (
    select coalesce(sum(amount), 0) as total
    from raw_lines
    where not exists (
        select 1 from shop_orders
        where
            shop_orders.id = raw_lines.order_id
            and shop_orders.status = 'cancelled'
            and shop_orders._deleted_at is null
    )
),

fact_total as (
    select coalesce(sum(amount), 0) as total from facts
),

final as (
    select
        raw_total.total as raw_amount,
        fact_total.total as fact_amount
    from raw_total
    cross join fact_total
    where raw_total.total <> fact_total.total
)

select * from final
