with

source as (
    select * from {{ source('raw', 'product_categories') }}
),

renamed as (
    select
        product_category_id,
        trim(product_category_name) as product_category_name,
        _loaded_at as loaded_at
    from source
    -- rows missing from the latest extract stay in raw with _deleted_at set
    where _deleted_at is null
)

select * from renamed
