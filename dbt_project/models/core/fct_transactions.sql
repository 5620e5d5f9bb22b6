{#
    Sales transactions: one row per order line sold (transaction_id = order_detail_id), from the
    extract's and the shop's lines (staging: for one id the most recent change wins). Lines of
    cancelled orders are not sales and stay out; a line whose order header, customer, city or
    product is unknown counts under that dimension's unknown member.

    Incremental on transaction_id. A run rebuilds the lines whose inputs changed after the fact's
    high-water mark (loaded_at: when the last run wrote a row): the line itself, its order header,
    the order's customer or city (so the lines of a late-arriving member are re-keyed when it
    arrives), or the product version that covers the order date. The pre-hooks first remove the
    lines deleted since then (from an extract or in the shop) and those of orders deleted or
    cancelled. The inputs' loaded_at are written by dbt itself (the base models under staging,
    the snapshot) or by the loader, so each change is seen by exactly one run. The transform DAG's
    weekly full refresh is the safety net.

    Indexed for the lookups of the incremental models: by order and write time (this model's own),
    by date_key and by (location_key, product_key) (the marts' lines of a month, of a product in a
    city). Those two carry the columns the marts sum, so a mart reads only the index (an
    index-only scan), not a table page per line. That holds for pages marked all-visible, which
    a table built from scratch has none of until autovacuum has read it all (minutes at 18 M
    lines), so each run ends with a VACUUM, after its commit since VACUUM cannot run in a
    transaction; after an incremental run it reads only the pages the run wrote.
#}
-- depends_on: {{ ref('base_order_details') }}
-- depends_on: {{ ref('base_orders') }}
-- depends_on: {{ ref('base_customers') }}
{{
    config(
        materialized='incremental',
        unique_key='transaction_id',
        incremental_strategy='merge',
        on_schema_change='fail',
        indexes=[
            {'columns': ['order_id']},
            {'columns': ['loaded_at']},
            {'columns': ['date_key', 'order_id', 'customer_key', 'quantity', 'amount']},
            {'columns': ['location_key', 'product_key', 'order_id', 'quantity', 'amount']},
        ],
        pre_hook=[
            "{% if is_incremental() %}
            delete from {{ this }}
            where transaction_id = any(array(
                select order_detail_id from {{ ref('base_order_details') }}
                where is_deleted and {{ written_after('loaded_at', high_water_mark()) }}
            ))
            {% endif %}",
            "{% if is_incremental() %}
            delete from {{ this }}
            where order_id = any(array(
                select order_id from {{ ref('base_orders') }}
                where
                    (is_deleted or order_status = 'cancelled')
                    and {{ written_after('loaded_at', high_water_mark()) }}
            ))
            {% endif %}",
        ],
        post_hook=after_commit('vacuum {{ this }}'),
    )
}}

with

order_lines as (
    select * from {{ ref('stg_order_details') }}
),

orders as (
    select * from {{ ref('stg_orders') }}
),

customers as (
    select * from {{ ref('dim_customers') }}
),

locations as (
    select * from {{ ref('dim_locations') }}
),

product_versions as (
    select * from {{ ref('dim_products') }}
),

{% if is_incremental() %}
    -- The lines whose inputs changed. Each branch reads its models through their indexes: not
    -- through the import CTEs above (PostgreSQL materializes a CTE read twice, in full), and with
    -- `= any(array(...))`, which makes PostgreSQL look each id up in an index, however many rows it
    -- guesses a high-water mark lets through (see written_after in macros/incremental.sql).
    changed_lines as (
        -- the line itself
        select order_detail_id from {{ ref('stg_order_details') }}
        where {{ written_after('loaded_at', high_water_mark()) }}

        union

        -- its order header, the order's customer (appeared, changed or gone) or city
        select lines_of_orders.order_detail_id
        from {{ ref('stg_order_details') }} as lines_of_orders
        where lines_of_orders.order_id = any(array(
            select changed_orders.order_id from {{ ref('stg_orders') }} as changed_orders
            where {{ written_after('changed_orders.loaded_at', high_water_mark()) }}
            union
            select orders_of_customers.order_id from {{ ref('stg_orders') }} as orders_of_customers
            where orders_of_customers.customer_id = any(array(
                select changed_customers.customer_id from {{ ref('base_customers') }} as changed_customers
                where {{ written_after('changed_customers.loaded_at', high_water_mark()) }}
            ))
            union
            select orders_in_cities.order_id from {{ ref('stg_orders') }} as orders_in_cities
            where orders_in_cities.city_id = any(array(
                select changed_cities.city_id from {{ ref('dim_locations') }} as changed_cities
                where {{ written_after('changed_cities.loaded_at', high_water_mark()) }}
            ))
        ))

        union

        -- the product version that covers its order date (a new product, a new price version)
        select lines_of_products.order_detail_id
        from {{ ref('stg_order_details') }} as lines_of_products
        inner join {{ ref('stg_orders') }} as orders_of_products
            on lines_of_products.order_id = orders_of_products.order_id
        inner join {{ ref('dim_products') }} as new_versions
            on
                lines_of_products.product_id = new_versions.product_id
                and orders_of_products.order_date >= new_versions.valid_from
        where
            {{ written_after('new_versions.loaded_at', high_water_mark()) }}
            and lines_of_products.product_id = any(array(
                select changed_products.product_id from {{ ref('dim_products') }} as changed_products
                where {{ written_after('changed_products.loaded_at', high_water_mark()) }}
            ))
    ),
{% endif %}

lines_to_build as (
    select * from order_lines
    {% if is_incremental() %}
        where order_detail_id = any(array(select changed_lines.order_detail_id from changed_lines))
    {% endif %}
),

orders_of_lines as (
    select * from orders
    {% if is_incremental() %}
        -- only the headers of those lines, each looked up by its key
        where order_id = any(array(select lines_to_build.order_id from lines_to_build))
    {% endif %}
),

joined as (
    select
        lines_to_build.order_detail_id as transaction_id,
        lines_to_build.order_id,
        orders.order_date,
        coalesce({{ date_key('orders.order_date') }}, -1) as date_key,
        coalesce(customers.customer_key, {{ unknown_key() }}) as customer_key,
        coalesce(product_versions.product_key, {{ unknown_key() }}) as product_key,
        coalesce(locations.location_key, {{ unknown_key() }}) as location_key,
        lines_to_build.quantity,
        lines_to_build.unit_price,
        lines_to_build.amount
    from lines_to_build
    left join orders_of_lines as orders
        on lines_to_build.order_id = orders.order_id
    left join customers
        on orders.customer_id = customers.customer_id
    left join locations
        on orders.city_id = locations.city_id
    -- the product version valid on the order date (windows are half-open and do not overlap)
    left join product_versions
        on
            lines_to_build.product_id = product_versions.product_id
            and orders.order_date >= product_versions.valid_from
            and orders.order_date < product_versions.valid_to
    -- the revenue of a cancelled order is not revenue
    where orders.order_status is distinct from 'cancelled'
),

final as (
    select
        cast(transaction_id as bigint) as transaction_id,
        cast(order_id as bigint) as order_id,
        cast(order_date as timestamp) as order_date,
        cast(date_key as integer) as date_key,
        cast(customer_key as text) as customer_key,
        cast(product_key as text) as product_key,
        cast(location_key as text) as location_key,
        cast(quantity as integer) as quantity,
        cast(unit_price as bigint) as unit_price,
        cast(amount as bigint) as amount,
        -- when this run wrote the row: the high-water mark of the next run
        cast(now() as timestamptz) as loaded_at
    from joined
)

select * from final
