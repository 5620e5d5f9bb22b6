with

source as (
    select * from {{ source('raw', 'products') }}
),

renamed as (
    select
        product_id,
        -- '<Type> <Color>' with single spaces; case kept as delivered (T-shirt, not T-Shirt)
        regexp_replace(trim(product_name), '\s+', ' ', 'g') as product_name,
        upper(trim(size)) as size,
        price,
        product_category_id,
        _loaded_at as loaded_at
    from source
    -- rows missing from the latest extract stay in raw with _deleted_at set
    where _deleted_at is null
)

select * from renamed
