{#
    Order lines from the order_details extract and from the shop's own table as mirrored by the
    stream. The shop's row wins for the same line id; a line deleted in the shop (tombstone) is
    left out, its extract row too.
#}
with

extract_lines as (
    select * from {{ source('raw', 'order_details') }}
),

shop_lines as (
    select * from {{ source('raw_store', 'shop_orderline') }}
),

extract_renamed as (
    select
        order_detail_id,
        order_id,
        product_id,
        qty as quantity,
        item_price as unit_price,
        -- the extract calls the line amount `unit_sales` (= qty x item_price)
        unit_sales as amount,
        _loaded_at as loaded_at
    from extract_lines
    where {{ not_in_shop('shop_orderline', 'extract_lines.order_detail_id') }}
),

shop_renamed as (
    select
        id as order_detail_id,
        order_id,
        product_id,
        quantity,
        unit_price,
        amount,
        _synced_at as loaded_at
    from shop_lines
    where _deleted_at is null
),

combined as (
    select * from extract_renamed
    union all
    select * from shop_renamed
)

select * from combined
