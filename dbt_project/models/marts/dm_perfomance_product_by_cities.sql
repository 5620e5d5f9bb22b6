{#
    Product performance per city: one row per city and product sold there.

    A product is its product_id across all its price versions; names and category come from
    its current version. revenue_rank_in_city uses rank(): products with equal revenue in a
    city share a rank and the next rank is skipped (1, 2, 2, 4), because nothing else makes
    one of them better. revenue_share_in_city_pct is rounded to 0.01, so a city's shares add
    up to 100 within rounding.

#}
with

transactions as (
    select * from {{ ref('fct_transactions') }}
),

product_versions as (
    select * from {{ ref('dim_products') }}
),

locations as (
    select * from {{ ref('dim_locations') }}
),

current_products as (
    select * from product_versions
    where is_current
),

sales as (
    select
        locations.city_id,
        product_versions.product_id,
        count(distinct transactions.order_id) as total_orders,
        sum(transactions.quantity) as total_quantity,
        sum(transactions.amount) as revenue
    from transactions
    inner join locations
        on transactions.location_key = locations.location_key
    inner join product_versions
        on transactions.product_key = product_versions.product_key
    group by locations.city_id, product_versions.product_id
),

ranked as (
    select
        *,
        100.0 * revenue / nullif(sum(revenue) over (partition by city_id), 0) as revenue_share,
        rank() over (partition by city_id order by revenue desc) as revenue_rank
    from sales
),

final as (
    select
        cast(locations.province_id as integer) as province_id,
        cast(locations.province_name as text) as province_name,
        cast(ranked.city_id as integer) as city_id,
        cast(locations.city_name as text) as city_name,
        cast(ranked.product_id as integer) as product_id,
        cast(current_products.product_name as text) as product_name,
        cast(current_products.product_type as text) as product_type,
        cast(current_products.size as text) as size,
        cast(current_products.product_category_name as text) as product_category_name,
        cast(ranked.total_orders as bigint) as total_orders,
        cast(ranked.total_quantity as bigint) as total_quantity,
        cast(ranked.revenue as bigint) as revenue,
        cast(round(ranked.revenue_share, 2) as numeric(5, 2)) as revenue_share_in_city_pct,
        cast(ranked.revenue_rank as integer) as revenue_rank_in_city
    from ranked
    inner join locations
        on ranked.city_id = locations.city_id
    inner join current_products
        on ranked.product_id = current_products.product_id
)

select * from final
