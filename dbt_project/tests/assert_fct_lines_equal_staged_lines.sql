-- Reconciliation: the fact holds exactly the staged order lines that are sales (all but those of
-- cancelled orders), with their amounts, no more, no fewer.
-- Read over what was written in the last `test_window` (the window of the other tests on the fact,
-- dbt's `where` config there): a full refresh writes every line, and `transform` runs after each
-- ingest and at least weekly, so every line is compared after it was written. Each check starts
-- from the rows of the window and looks the other side up by its key (`= any(array(...))`: an
-- index lookup per key, however many rows PostgreSQL guesses the window holds).
-- Returns the lines that differ, with what is wrong.
with

-- the lines staged lately, and their orders' status (the lines of a cancelled order are not sales)
recent_lines as (
    select
        order_detail_id,
        order_id,
        amount
    from {{ ref('stg_order_details') }}
    where loaded_at >= now() - interval '{{ var("test_window") }}'
),

orders_of_recent_lines as (
    select
        order_id,
        order_status
    from {{ ref('stg_orders') }}
    where order_id = any(array(select recent_lines.order_id from recent_lines))
),

facts_of_recent_lines as (
    select
        transaction_id,
        amount
    from {{ ref('fct_transactions') }}
    where transaction_id = any(array(select recent_lines.order_detail_id from recent_lines))
),

-- the fact rows written lately, and their lines and orders
fact_rows as (
    select
        transaction_id,
        amount
    from {{ ref('fct_transactions') }}
    where loaded_at >= now() - interval '{{ var("test_window") }}'
),

lines_of_fact_rows as (
    select
        order_detail_id,
        order_id
    from {{ ref('stg_order_details') }}
    where order_detail_id = any(array(select fact_rows.transaction_id from fact_rows))
),

orders_of_fact_rows as (
    select
        order_id,
        order_status
    from {{ ref('stg_orders') }}
    where order_id = any(array(select lines_of_fact_rows.order_id from lines_of_fact_rows))
),

-- the lines deleted lately, and the orders deleted or cancelled lately
removed_lines as (
    select order_detail_id from {{ ref('base_order_details') }}
    where is_deleted and loaded_at >= now() - interval '{{ var("test_window") }}'
),

removed_orders as (
    select order_id from {{ ref('base_orders') }}
    where (is_deleted or order_status = 'cancelled') and loaded_at >= now() - interval '{{ var("test_window") }}'
),

-- a sold line staged lately (not of a cancelled order) is in the fact, with its amount
missing_or_different as (
    select
        recent_lines.order_detail_id,
        recent_lines.amount as staged_amount,
        facts_of_recent_lines.amount as fact_amount,
        case
            when facts_of_recent_lines.transaction_id is null then 'missing from fct_transactions'
            else 'amount differs'
        end as problem
    from recent_lines
    left join orders_of_recent_lines
        on recent_lines.order_id = orders_of_recent_lines.order_id
    left join facts_of_recent_lines
        on recent_lines.order_detail_id = facts_of_recent_lines.transaction_id
    where
        orders_of_recent_lines.order_status is distinct from 'cancelled'
        and (
            facts_of_recent_lines.transaction_id is null
            or facts_of_recent_lines.amount <> recent_lines.amount
        )
),

-- a fact row written lately is a staged line, not of a cancelled order
not_sold as (
    select
        fact_rows.transaction_id as order_detail_id,
        cast(null as bigint) as staged_amount,
        fact_rows.amount as fact_amount,
        'not a sold line of stg_order_details' as problem
    from fact_rows
    left join lines_of_fact_rows
        on fact_rows.transaction_id = lines_of_fact_rows.order_detail_id
    left join orders_of_fact_rows
        on lines_of_fact_rows.order_id = orders_of_fact_rows.order_id
    where lines_of_fact_rows.order_detail_id is null or orders_of_fact_rows.order_status = 'cancelled'
),

-- a line deleted lately, or of an order deleted or cancelled lately, is out of the fact
still_there as (
    select
        transaction_id as order_detail_id,
        cast(null as bigint) as staged_amount,
        amount as fact_amount,
        'deleted, still in fct_transactions' as problem
    from {{ ref('fct_transactions') }}
    where transaction_id = any(array(select removed_lines.order_detail_id from removed_lines))
    union all
    select
        transaction_id as order_detail_id,
        cast(null as bigint) as staged_amount,
        amount as fact_amount,
        'order deleted or cancelled, still in fct_transactions' as problem
    from {{ ref('fct_transactions') }}
    where order_id = any(array(select removed_orders.order_id from removed_orders))
),

final as (
    select * from missing_or_different
    union all
    select * from not_sold
    union all
    select * from still_there
)

select * from final
