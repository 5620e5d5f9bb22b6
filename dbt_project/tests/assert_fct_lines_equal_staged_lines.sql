-- Reconciliation: the fact holds exactly the staged order lines that are sales (all but those of
-- cancelled orders), with their amounts, no more, no fewer.
-- Read over the lines written in the last two days on either side, or whose order was (the window
-- of the other tests on the fact, dbt's `where` config there): a full refresh writes every line,
-- and `transform` runs daily, so every line is compared at least once.
-- Returns the lines that differ, with what is wrong.
with

recent_lines as (
    select written_lines.order_detail_id from {{ ref('base_order_details') }} as written_lines
    where written_lines.loaded_at >= now() - interval '2 days'
    union
    select facts_written.transaction_id from {{ ref('fct_transactions') }} as facts_written
    where facts_written.loaded_at >= now() - interval '2 days'
    union
    select lines_of_orders.order_detail_id from {{ ref('base_order_details') }} as lines_of_orders
    where lines_of_orders.order_id in (
        select written_orders.order_id from {{ ref('base_orders') }} as written_orders
        where written_orders.loaded_at >= now() - interval '2 days'
    )
),

staged as (
    select * from {{ sold_order_lines() }} as sold
    where order_detail_id in (select recent_lines.order_detail_id from recent_lines)
),

facts as (
    select * from {{ ref('fct_transactions') }}
    where transaction_id in (select recent_lines.order_detail_id from recent_lines)
),

final as (
    select
        coalesce(staged.order_detail_id, facts.transaction_id) as order_detail_id,
        staged.amount as staged_amount,
        facts.amount as fact_amount,
        case
            when facts.transaction_id is null then 'missing from fct_transactions'
            when staged.order_detail_id is null then 'not a sold line of stg_order_details'
            else 'amount differs'
        end as problem
    from staged
    full outer join facts
        on staged.order_detail_id = facts.transaction_id
    where
        staged.order_detail_id is null
        or facts.transaction_id is null
        or staged.amount <> facts.amount
)

select * from final
