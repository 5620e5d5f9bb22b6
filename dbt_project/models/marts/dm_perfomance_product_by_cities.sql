{#
    Product performance per city: one row per city and product sold there.

    A product is its product_id across all its price versions; names and category come from
    its current version. revenue_rank_in_city uses rank(): products with equal revenue in a
    city share a rank and the next rank is skipped (1, 2, 2, 4), because nothing else makes
    one of them better. revenue_share_in_city_pct is rounded to 0.01, so a city's shares add
    up to 100 within rounding.

    Incremental. When every fct_transactions load since the last build only appended lines of
    new orders (macro fct_transactions_changes_since), the stored totals stay valid and the
    appended lines are added to them: quantities and revenue add up, and so do distinct
    orders, since no appended order was counted before. Shares and ranks are then recomputed
    for every city and the names joined afresh, and the table's rows replaced (a few thousand).
    Any other change to the fact rebuilds the totals from the whole fact.
#}
-- depends_on: {{ ref('fct_transactions_loads') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='replace',
        on_schema_change='append_new_columns',
    )
}}
{%- set plan = fct_transactions_changes_since(this) if is_incremental() else {'mode': 'full'} %}
{%- set add_to_previous = plan.mode == 'delta' %}

with

transactions as (
    select * from {{ ref('fct_transactions') }}
    {% if add_to_previous %}
        -- only the lines appended since the last build
        where {{ 'transaction_id > ' ~ plan.after_line_id if plan.after_line_id is not none else 'false' }}
    {% endif %}
),

product_versions as (
    select * from {{ ref('dim_products') }}
),

locations as (
    select * from {{ ref('dim_locations') }}
),

previous_build as (
    {% if add_to_previous %}
        select * from {{ this }}
    {% else %}
        select
            cast(null as integer) as city_id,
            cast(null as integer) as product_id,
            cast(null as bigint) as total_orders,
            cast(null as bigint) as total_quantity,
            cast(null as bigint) as revenue
        where false
    {% endif %}
),

current_products as (
    select * from product_versions
    where is_current
),

new_sales as (
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

-- the stored totals plus the new lines' (no stored totals on a full build)
sales as (
    select
        coalesce(new_sales.city_id, previous_build.city_id) as city_id,
        coalesce(new_sales.product_id, previous_build.product_id) as product_id,
        coalesce(previous_build.total_orders, 0) + coalesce(new_sales.total_orders, 0) as total_orders,
        coalesce(previous_build.total_quantity, 0) + coalesce(new_sales.total_quantity, 0) as total_quantity,
        coalesce(previous_build.revenue, 0) + coalesce(new_sales.revenue, 0) as revenue
    from new_sales
    full outer join previous_build
        on
            new_sales.city_id = previous_build.city_id
            and new_sales.product_id = previous_build.product_id
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
        cast(ranked.revenue_rank as integer) as revenue_rank_in_city,
        {{ fct_transactions_last_load() }} as fact_loaded_at
    from ranked
    inner join locations
        on ranked.city_id = locations.city_id
    inner join current_products
        on ranked.product_id = current_products.product_id
)

select * from final
