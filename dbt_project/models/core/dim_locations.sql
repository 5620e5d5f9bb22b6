with

cities as (
    select * from {{ ref('stg_cities') }}
),

provinces as (
    select * from {{ ref('stg_provinces') }}
),

located as (
    select
        {{ surrogate_key(['cities.city_id']) }} as location_key,
        cities.city_id,
        cities.city_name,
        -- the name says it: KABUPATEN <NAME> (regency) or KOTA <NAME> (city)
        case split_part(cities.city_name, ' ', 1)
            when 'KABUPATEN' then 'KABUPATEN'
            when 'KOTA' then 'KOTA'
        end as city_type,
        cities.province_id,
        coalesce(provinces.province_name, 'UNKNOWN') as province_name,
        -- a city's key depends on the city alone: its own change time, not its province's
        cities.loaded_at
    from cities
    left join provinces
        on cities.province_id = provinces.province_id
),

-- fact rows whose city is missing from the extract point here
unknown_member as (
    select
        {{ unknown_key() }} as location_key,
        -1 as city_id,
        'UNKNOWN' as city_name,
        'UNKNOWN' as city_type,
        -1 as province_id,
        'UNKNOWN' as province_name,
        cast('-infinity' as timestamptz) as loaded_at
),

final as (
    select * from located
    union all
    select * from unknown_member
)

select * from final
