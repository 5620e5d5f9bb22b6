with

source as (
    select * from {{ source('raw', 'orders') }}
),

renamed as (
    select
        order_id,
        order_date,
        customer_id,
        province_id,
        city_id,
        _loaded_at as loaded_at
    from source
)

select * from renamed
