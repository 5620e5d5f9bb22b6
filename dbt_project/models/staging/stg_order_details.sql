{#
    Order lines, one row per line id, from the extract and the shop (base_order_details: for one id
    the most recent change wins), deleted lines left out.
#}
with

lines as (
    select * from {{ ref('base_order_details') }}
),

live as (
    select
        order_detail_id,
        order_id,
        product_id,
        quantity,
        unit_price,
        amount,
        changed_at,
        loaded_at
    from lines
    where not is_deleted
)

select * from live
