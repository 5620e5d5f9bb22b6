-- Reconciliation: the fact holds exactly the staged order lines that are sales (all but those of
-- cancelled orders), no more, no fewer.
-- Returns the ids found on one side only (one full join: a single pass over both).
-- After appends only the lines above the last whole-table check are compared, on both sides
-- (macro fct_transactions_unchecked_rows): the load log proved every line below unchanged, and
-- an append writes no fact row below; any other load compares every line.
with

staged as (
    select order_detail_id from {{ sold_order_lines() }} as sold
    where {{ fct_transactions_unchecked_rows('order_detail_id') }}
),

facts as (
    select transaction_id from {{ ref('fct_transactions') }}
    where {{ fct_transactions_unchecked_rows() }}
),

final as (
    select
        staged.order_detail_id,
        facts.transaction_id,
        case
            when facts.transaction_id is null then 'missing from fct_transactions'
            else 'not a sold line of stg_order_details'
        end as problem
    from staged
    full outer join facts
        on staged.order_detail_id = facts.transaction_id
    where staged.order_detail_id is null or facts.transaction_id is null
)

select * from final
