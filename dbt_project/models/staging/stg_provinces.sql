with

source as (
    select * from {{ source('raw', 'provinces') }}
),

renamed as (
    select
        province_id,
        upper(trim(province_names)) as province_name,
        _loaded_at as loaded_at
    from source
    -- rows missing from the latest extract stay in raw with _deleted_at set
    where _deleted_at is null
)

select * from renamed
