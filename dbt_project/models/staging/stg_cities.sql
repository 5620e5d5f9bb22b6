with

source as (
    select * from {{ source('raw', 'cities') }}
),

renamed as (
    select
        city_id,
        -- collapse inner runs of spaces too: the name's first word is the city type
        upper(regexp_replace(trim(city_names), '\s+', ' ', 'g')) as city_name,
        province_id,
        _loaded_at as loaded_at
    from source
    -- rows missing from the latest extract stay in raw with _deleted_at set
    where _deleted_at is null
)

select * from renamed
