-- Reconciliation: within each city the revenue shares add up to 100, within rounding
-- (each share is rounded to 0.01, so the sum may be off by up to 0.005 per product).
with

performance as (
    select * from {{ ref('dm_perfomance_product_by_cities') }}
),

per_city as (
    select
        city_id,
        sum(revenue_share_in_city_pct) as total_share,
        count(*) as products
    from performance
    group by city_id
    -- a city whose revenue is 0 has no shares to add up
    having sum(revenue) <> 0
),

final as (
    select * from per_city
    where abs(total_share - 100) > 0.005 * products
)

select * from final
