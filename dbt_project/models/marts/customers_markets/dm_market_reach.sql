{#
    Market reach: one row per city of dim_locations, cities without any sale included (with zero
    customers, orders and revenue): they are the untapped markets.

    The two 90-day windows end on the day of the latest order in the fact (not today, so the
    mart does not change just because time passes): revenue_last_90_days covers that day and
    the 89 before it, revenue_previous_90_days the 90 days before those. revenue_growth_pct
    compares the two and is null when the previous window has no revenue.
    revenue_rank_in_province uses rank(): equal revenue shares a rank (1, 2, 2, 4).
    province_iso_code (ISO 3166-2, from the seed province_iso_codes) is what Superset's country
    map of Indonesia joins on.
#}

with

transactions as (
    select * from {{ ref('fct_transactions') }}
),

locations as (
    select * from {{ ref('dim_locations') }}
),

province_codes as (
    select * from {{ ref('province_iso_codes') }}
),

reference_day as (
    select cast(max(order_date) as date) as latest_order_day
    from transactions
),

dated_transactions as (
    select
        transactions.*,
        cast(transactions.order_date as date) > reference_day.latest_order_day - 90 as in_last_90_days,
        cast(transactions.order_date as date) <= reference_day.latest_order_day - 90
        and cast(transactions.order_date as date) > reference_day.latest_order_day - 180 as in_previous_90_days
    from transactions
    cross join reference_day
),

per_location as (
    select
        location_key,
        count(distinct customer_key) as customers,
        count(distinct order_id) as orders,
        sum(amount) as revenue,
        cast(min(order_date) as date) as first_order_date,
        cast(max(order_date) as date) as last_order_date,
        coalesce(sum(amount) filter (where in_last_90_days), 0) as revenue_last_90_days,
        coalesce(sum(amount) filter (where in_previous_90_days), 0) as revenue_previous_90_days
    from dated_transactions
    group by location_key
),

joined as (
    select
        locations.province_id,
        locations.province_name,
        province_codes.iso_3166_2_code as province_iso_code,
        locations.city_id,
        locations.city_name,
        locations.city_type,
        coalesce(per_location.customers, 0) as customers,
        coalesce(per_location.orders, 0) as orders,
        coalesce(per_location.revenue, 0) as revenue,
        per_location.first_order_date,
        per_location.last_order_date,
        coalesce(per_location.revenue_last_90_days, 0) as revenue_last_90_days,
        coalesce(per_location.revenue_previous_90_days, 0) as revenue_previous_90_days
    from locations
    left join per_location
        on locations.location_key = per_location.location_key
    left join province_codes
        on locations.province_name = province_codes.province_name
),

final as (
    select
        cast(province_id as integer) as province_id,
        cast(province_name as text) as province_name,
        cast(province_iso_code as text) as province_iso_code,
        cast(city_id as integer) as city_id,
        cast(city_name as text) as city_name,
        cast(city_type as text) as city_type,
        cast(customers as bigint) as customers,
        cast(orders as bigint) as orders,
        cast(revenue as bigint) as revenue,
        cast(coalesce(round(revenue / nullif(customers, 0), 2), 0) as numeric(18, 2)) as revenue_per_customer,
        cast(first_order_date as date) as first_order_date,
        cast(last_order_date as date) as last_order_date,
        cast(revenue_last_90_days as bigint) as revenue_last_90_days,
        cast(revenue_previous_90_days as bigint) as revenue_previous_90_days,
        cast(
            round(100.0 * (revenue_last_90_days - revenue_previous_90_days) / nullif(revenue_previous_90_days, 0), 2)
            as numeric(12, 2)
        ) as revenue_growth_pct,
        cast(rank() over (partition by province_id order by revenue desc) as integer) as revenue_rank_in_province
    from joined
)

select * from final
