{#
    Order headers from both places that write them: the orders extract (the batch history) and the
    shop's own table as mirrored by the stream. The shop's row wins for the same order id; an order
    deleted in the shop (tombstone) is left out, its extract row too.
#}
with

extract_orders as (
    select * from {{ source('raw', 'orders') }}
),

shop_orders as (
    select * from {{ source('raw_store', 'shop_order') }}
),

extract_renamed as (
    select
        order_id,
        order_date,
        customer_id,
        province_id,
        city_id,
        -- the extract holds orders that were delivered
        'delivered' as order_status,
        _loaded_at as loaded_at
    from extract_orders
    where {{ not_in_shop('shop_order', 'extract_orders.order_id') }}
),

shop_renamed as (
    select
        id as order_id,
        -- the extract's dates are the shop's local time without a zone: the same here
        created_at at time zone 'Asia/Jakarta' as order_date,
        customer_id,
        province_id,
        city_id,
        lower(trim(status)) as order_status,
        _synced_at as loaded_at
    from shop_orders
    where _deleted_at is null
),

combined as (
    select * from extract_renamed
    union all
    select * from shop_renamed
)

select * from combined
