-- Reconciliation: the fact holds exactly the staged order lines that are sales (all but those of
-- cancelled orders), with their amounts, no more, no fewer.
-- Read over what was written in the last two days (the window of the other tests on the fact,
-- dbt's `where` config there): a full refresh writes every line, and `transform` runs after each
-- ingest and at least weekly, so every line is compared after it was written. Each check starts
-- from the rows of the window and looks the other side up by its key.
-- Returns the lines that differ, with what is wrong.
with

staged_lines as (
    select * from {{ sold_order_lines() }} as sold
    where loaded_at >= now() - interval '2 days'
),

fact_rows as (
    select * from {{ ref('fct_transactions') }}
    where loaded_at >= now() - interval '2 days'
),

removed_lines as (
    select deleted_lines.order_detail_id from {{ ref('base_order_details') }} as deleted_lines
    where deleted_lines.is_deleted and deleted_lines.loaded_at >= now() - interval '2 days'
),

removed_orders as (
    select gone_orders.order_id from {{ ref('base_orders') }} as gone_orders
    where
        (gone_orders.is_deleted or gone_orders.order_status = 'cancelled')
        and gone_orders.loaded_at >= now() - interval '2 days'
),

-- a sold line staged lately is in the fact, with its amount
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
    where facts.transaction_id is null or facts.amount <> staged_lines.amount
),

-- a fact row written lately is a sold staged line
not_sold as (
    select
        fact_rows.transaction_id as order_detail_id,
        cast(null as bigint) as staged_amount,
        fact_rows.amount as fact_amount,
        'not a sold line of stg_order_details' as problem
    from fact_rows
    where not exists (
        select 1 from {{ sold_order_lines() }} as sold
        where sold.order_detail_id = fact_rows.transaction_id
    )
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
