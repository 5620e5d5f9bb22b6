{#
    The calendar: one row per day, whole years from the first to the last order date, so
    every order date has its row (and months and years are complete for reporting).
#}
with

orders as (
    select * from {{ ref('stg_orders') }}
),

bounds as (
    select
        cast(date_trunc('year', min(order_date)) as date) as first_day,
        cast(date_trunc('year', max(order_date)) + interval '1 year - 1 day' as date) as last_day
    from orders
),

days as (
    select cast(day_series.day_start as date) as date_day
    from bounds
    cross join
        lateral generate_series(bounds.first_day, bounds.last_day, interval '1 day') as day_series (day_start)
),

calendar as (
    select
        {{ date_key('date_day') }} as date_key,
        date_day,
        cast(extract(day from date_day) as integer) as day_of_month,
        cast(extract(isodow from date_day) as integer) as day_of_week,
        -- FM drops the blank padding; names are English whatever the server's locale
        to_char(date_day, 'FMDay') as day_name,
        cast(extract(doy from date_day) as integer) as day_of_year,
        cast(extract(week from date_day) as integer) as iso_week,
        cast(extract(isoyear from date_day) as integer) as iso_year,
        cast(date_trunc('week', date_day) as date) as week_start,
        cast(extract(month from date_day) as integer) as month,
        to_char(date_day, 'FMMonth') as month_name,
        to_char(date_day, 'Mon') as month_short_name,
        cast(date_trunc('month', date_day) as date) as month_start,
        cast(extract(quarter from date_day) as integer) as quarter,
        'Q' || extract(quarter from date_day) as quarter_name,
        cast(extract(year from date_day) as integer) as year,
        extract(isodow from date_day) in (6, 7) as is_weekend
    from days
),

-- fact rows without an order date point here
unknown_member as (
    select
        -1 as date_key,
        cast(null as date) as date_day,
        cast(null as integer) as day_of_month,
        cast(null as integer) as day_of_week,
        'Unknown' as day_name,
        cast(null as integer) as day_of_year,
        cast(null as integer) as iso_week,
        cast(null as integer) as iso_year,
        cast(null as date) as week_start,
        cast(null as integer) as month,
        'Unknown' as month_name,
        'Unknown' as month_short_name,
        cast(null as date) as month_start,
        cast(null as integer) as quarter,
        'Unknown' as quarter_name,
        cast(null as integer) as year,
        cast(null as boolean) as is_weekend
),

final as (
    select * from calendar
    union all
    select * from unknown_member
)

select * from final
