with

source as (
    select * from {{ source('raw', 'order_details') }}
),

renamed as (
    select
        order_detail_id,
        order_id,
        product_id,
        qty as quantity,
        item_price as unit_price,
        -- the extract calls the line amount `unit_sales` (= qty x item_price)
        unit_sales as amount,
        _loaded_at as loaded_at
    from source
)

select * from renamed
