with

source as (
    select * from {{ source('raw', 'customers') }}
),

renamed as (
    select
        customer_id,
        trim(first_name) as first_name,
        trim(last_name) as last_name,
        -- 'male ', 'MALE' -> 'Male'
        initcap(trim(gender)) as gender,
        _loaded_at as loaded_at
    from source
)

select * from renamed
