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
)

select * from renamed
