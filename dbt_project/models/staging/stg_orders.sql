{#
    Order headers, one row per order id, from the extract and the shop (base_orders: for one id
    the most recent change wins), deleted orders left out.
#}
with

orders as (
    select * from {{ ref('base_orders') }}
),

live as (
    select
        order_id,
        order_date,
        customer_id,
        province_id,
        city_id,
        order_status,
        changed_at,
        loaded_at
    from orders
    where not is_deleted
)

select * from live
