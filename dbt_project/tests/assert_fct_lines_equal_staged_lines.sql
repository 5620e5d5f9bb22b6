-- Reconciliation: the fact holds exactly the staged order lines that are sales (all but those of
-- cancelled orders), with their amounts, no more, no fewer.
-- Read over what was written in the last `test_window` (the window of the other tests on the fact,
-- dbt's `where` config there): a full refresh writes every line, and `transform` runs after each
-- ingest and at least weekly, so every line is compared after it was written. Each check starts
-- from the rows of the window and looks the other side up by its key.
-- Returns the lines that differ, with what is wrong.
with

-- the lines staged lately, with their order's status (the lines of a cancelled order are not sales)
staged_lines as (
    select
        order_lines.order_detail_id,
        order_lines.amount,
        orders.order_status
    from {{ ref('stg_order_details') }} as order_lines
    left join {{ ref('stg_orders') }} as orders
        on order_lines.order_id = orders.order_id
    where order_lines.loaded_at >= now() - interval '{{ var("test_window") }}'
),

fact_rows as (
    select * from {{ ref('fct_transactions') }}
    where loaded_at >= now() - interval '{{ var("test_window") }}'
),

removed_lines as (
    select deleted_lines.order_detail_id from {{ ref('base_order_details') }} as deleted_lines
    where deleted_lines.is_deleted and deleted_lines.loaded_at >= now() - interval '{{ var("test_window") }}'
),

removed_orders as (
    select gone_orders.order_id from {{ ref('base_orders') }} as gone_orders
    where
        (gone_orders.is_deleted or gone_orders.order_status = 'cancelled')
        and gone_orders.loaded_at >= now() - interval '{{ var("test_window") }}'
),

-- a sold line staged lately (not of a cancelled order) is in the fact, with its amount
missing_or_different as (
    select
        staged_lines.order_detail_id,
        staged_lines.amount as staged_amount,
        facts.amount as fact_amount,
        case
            when facts.transaction_id is null then 'missing from fct_transactions'
            else 'amount differs'
        end as problem
    from staged_lines
    left join {{ ref('fct_transactions') }} as facts
        on staged_lines.order_detail_id = facts.transaction_id
    where
        staged_lines.order_status is distinct from 'cancelled'
        and (facts.transaction_id is null or facts.amount <> staged_lines.amount)
),

-- a fact row written lately is a staged line, not of a cancelled order
not_sold as (
    select
        fact_rows.transaction_id as order_detail_id,
        cast(null as bigint) as staged_amount,
        fact_rows.amount as fact_amount,
        'not a sold line of stg_order_details' as problem
    from fact_rows
    left join {{ ref('stg_order_details') }} as order_lines
        on fact_rows.transaction_id = order_lines.order_detail_id
    left join {{ ref('stg_orders') }} as orders
        on order_lines.order_id = orders.order_id
    where order_lines.order_detail_id is null or orders.order_status = 'cancelled'
),

-- a line deleted lately, or of an order deleted or cancelled lately, is out of the fact
still_there as (
    select
        facts.transaction_id as order_detail_id,
        cast(null as bigint) as staged_amount,
        facts.amount as fact_amount,
        'deleted, still in fct_transactions' as problem
    from {{ ref('fct_transactions') }} as facts
    inner join removed_lines
        on facts.transaction_id = removed_lines.order_detail_id
    union all
    select
        facts.transaction_id as order_detail_id,
        cast(null as bigint) as staged_amount,
        facts.amount as fact_amount,
        'order deleted or cancelled, still in fct_transactions' as problem
    from {{ ref('fct_transactions') }} as facts
    inner join removed_orders
        on facts.order_id = removed_orders.order_id
),

final as (
    select * from missing_or_different
    union all
    select * from not_sold
    union all
    select * from still_there
)

select * from final
