{#
    Product performance per city: one row per city and product sold there.

    A product is its product_id across all its price versions; names and category come from
    its current version. revenue_rank_in_city uses rank(): products with equal revenue in a
    city share a rank and the next rank is skipped (1, 2, 2, 4), because nothing else makes
    one of them better. revenue_share_in_city_pct is rounded to 0.01, so a city's shares add
    up to 100 within rounding.

    Incremental on city_id (delete+insert): a run rebuilds the cities where a product's sales
    changed after its high-water mark (loaded_at: when its last run wrote a row). Only the changed
    (city, product) pairs are summed again from the fact; the city's other products are taken as
    stored, since ranks and shares compare a city's products with each other. A pair changed when
    the fact wrote or removed one of its lines (a line deleted, an order deleted or cancelled), and
    every pair of a product or city whose names changed. When a product or a city arrives, the
    fact moves the lines that waited for it from the unknown member: every pair of that member is
    summed again. The pre-hook first deletes the stored pairs that no line is left in (their last
    line removed, or moved from the unknown member): delete+insert rewrites only the cities the
    select returns, and a city without a line left returns nothing. (An order moved to another city after it was built leaves its old city's pair
    behind: which city it was is not kept anywhere. The weekly full refresh corrects it.)
#}
-- depends_on: {{ ref('base_orders') }}
-- depends_on: {{ ref('base_order_details') }}
{{
    config(
        materialized='incremental',
        unique_key='city_id',
        incremental_strategy='delete+insert',
        on_schema_change='fail',
        indexes=[{'columns': ['city_id']}, {'columns': ['product_id']}],
        pre_hook=[
            "{% if is_incremental() %}
            delete from {{ this }} as stored
            where
                (
                    stored.city_id = -1
                    or stored.product_id = -1
                    or stored.city_id = any(array(
                        select orders_of_lines.city_id from {{ ref('base_orders') }} as orders_of_lines
                        where orders_of_lines.order_id = any(array(
                            {{ orders_with_removed_lines() }}
                        ))
                    ))
                )
                -- no line left: one index lookup per stored pair (a lateral subquery, which
                -- PostgreSQL cannot turn into an anti-join over the whole fact)
                and not exists (
                    select 1
                    from {{ ref('dim_locations') }} as cities
                    cross join lateral (
                        select 1 as found
                        from {{ ref('fct_transactions') }} as lines
                        where {{ lines_of_pair('lines', 'cities.location_key', 'stored.product_id') }}
                        limit 1
                    ) as a_line
                    where cities.city_id = stored.city_id
                )
            {% endif %}",
        ],
    )
}}

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

{% if is_incremental() %}
    changed_pairs as (
        -- lines the fact wrote
        select changed_cities.city_id, changed_products.product_id
        from {{ ref('fct_transactions') }} as changed_lines
        inner join {{ ref('dim_locations') }} as changed_cities
            on changed_lines.location_key = changed_cities.location_key
        inner join {{ ref('dim_products') }} as changed_products
            on changed_lines.product_key = changed_products.product_key
        where {{ written_after('changed_lines.loaded_at', high_water_mark()) }}

        union

        -- lines removed: deleted, or of an order deleted or cancelled (under the unknown members
        -- when the fact counted them there)
        select coalesce(cities_of_lines.city_id, -1), coalesce(products_of_lines.product_id, -1)
        from {{ ref('base_order_details') }} as removed_lines
        inner join {{ ref('base_orders') }} as orders_of_lines
            on removed_lines.order_id = orders_of_lines.order_id
        left join {{ ref('dim_locations') }} as cities_of_lines
            on orders_of_lines.city_id = cities_of_lines.city_id
        left join {{ ref('dim_products') }} as products_of_lines
            on removed_lines.product_id = products_of_lines.product_id and products_of_lines.is_current
        where
            removed_lines.order_id = any(array(
                {{ orders_with_removed_lines() }}
            ))

        union

        -- every stored pair of a product or a city whose names changed; and, once a product or a
        -- city arrived, every pair under the unknown member, whose lines that waited for it moved
        select stored.city_id, stored.product_id
        from {{ this }} as stored
        where
            stored.product_id = any(array(
                select product_id from {{ ref('dim_products') }}
                where {{ written_after('loaded_at', high_water_mark()) }}
                union all
                select -1 from {{ ref('dim_products') }}
                where {{ written_after('loaded_at', high_water_mark()) }}
            ))
            or stored.city_id = any(array(
                select city_id from {{ ref('dim_locations') }}
                where {{ written_after('loaded_at', high_water_mark()) }}
                union all
                select -1 from {{ ref('dim_locations') }}
                where {{ written_after('loaded_at', high_water_mark()) }}
            ))
    ),

    sales as (
        -- each changed pair summed again from its own lines, looked up in the fact's
        -- (location_key, product_key) index: what a pair costs is its lines, not the fact
        select
            changed_pairs.city_id,
            changed_pairs.product_id,
            pair_lines.total_orders,
            pair_lines.total_quantity,
            pair_lines.revenue
        from changed_pairs
        inner join {{ ref('dim_locations') }} as pair_cities
            on changed_pairs.city_id = pair_cities.city_id
        cross join lateral (
            select
                count(distinct lines_of_pair.order_id) as total_orders,
                sum(lines_of_pair.quantity) as total_quantity,
                sum(lines_of_pair.amount) as revenue
            from {{ ref('fct_transactions') }} as lines_of_pair
            where {{ lines_of_pair('lines_of_pair', 'pair_cities.location_key', 'changed_pairs.product_id') }}
        ) as pair_lines
        -- a pair without a line left is no row
        where pair_lines.total_orders > 0

        union all

        -- the other products of those cities, as stored
        select stored.city_id, stored.product_id, stored.total_orders, stored.total_quantity, stored.revenue
        from {{ this }} as stored
        where
            stored.city_id = any(array(select changed_pairs.city_id from changed_pairs))
            and not exists (
                select 1 from changed_pairs
                where changed_pairs.city_id = stored.city_id and changed_pairs.product_id = stored.product_id
            )
    ),
{% else %}
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
{% endif %}

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
        -- when this run wrote the row: the high-water mark of the next run
        cast(now() as timestamptz) as loaded_at
    from ranked
    inner join locations
        on ranked.city_id = locations.city_id
    inner join current_products
        on ranked.product_id = current_products.product_id
)

select * from final
