{#
    Sales transactions: one row per order line (transaction_id = order_detail_id).

    Incremental, two paths. Raw loads replace whole tables, so `_loaded_at` moves for every
    row on every load and cannot tell new lines from old ones; the load log
    fct_transactions_loads (run just before) fingerprints the inputs instead:

    - append: the sold order lines and the order headers up to the previous load's highest
      ids, and the dimension members, are provably the same as when the fact was last built.
      Every stored row is then still what a full refresh would build, and only the lines above
      the previous highest line id are read and inserted.
    - compare (anything else: a line changed, deleted or cancelled in the shop, a late line,
      a dimension change): each sold line is compared with the stored row of the same
      transaction_id and only lines that are new, whose source values changed (source_hash:
      md5 of the line and its order header), or whose dimension keys resolve differently now
      (a late-arriving customer, city or product, a member gone, a price version snapshotted
      that covers the order date) are merged; lines gone (from the extract, deleted or
      cancelled in the shop) are deleted by the post-hook.

    Lines of cancelled orders are not sales and stay out. Either way an incremental run ends
    equal to a full refresh. The last post-hook records in the log, in the same transaction,
    that this run's inputs are now what the fact holds.
#}
-- depends_on: {{ ref('fct_transactions_loads') }}
-- The index on (customer_key, date_key), a foreign key's index as usual in a star, lets
-- dm_revenue_by_months look up whether a new line's customer already bought in that month.
{{
    config(
        materialized='incremental',
        unique_key='transaction_id',
        incremental_strategy='merge_or_append',
        on_schema_change='fail',
        indexes=[{'columns': ['customer_key', 'date_key']}],
        post_hook=[
            "{% if is_incremental() and fct_transactions_load_plan().path == 'compare' %}
            -- after the merge the table holds every sold line, so it has more rows only when
            -- lines were removed (from the extract, deleted or cancelled in the shop); the
            -- counts spare the scan otherwise
            delete from {{ this }} as fct
            where
                (select count(*) from {{ this }})
                > (select count(*) from {{ sold_order_lines() }} as sold)
                and not exists (
                    select 1 from {{ sold_order_lines() }} as lines
                    where lines.order_detail_id = fct.transaction_id
                )
            {% endif %}",
            "{{ fct_transactions_record_load() }}",
            "{% if not is_incremental() %}
            -- fresh statistics after a full build, so later `transaction_id > n` filters
            -- (append loads, marts, tests) are planned as the index range scans they are
            analyze {{ this }}
            {% endif %}",
        ],
    )
}}
{%- set load_plan = fct_transactions_load_plan() if is_incremental() else none %}
{%- set append_only = load_plan is not none and load_plan.path == 'append' %}

with

-- the staged lines without those of cancelled orders
order_lines as (
    select * from {{ sold_order_lines() }} as sold
    {% if append_only and load_plan.after_line_id is not none %}
        -- append: every line up to here is already stored as a full refresh would store it
        where order_detail_id > {{ load_plan.after_line_id }}
    {% endif %}
),

orders as (
    select * from {{ ref('stg_orders') }}
    {% if append_only and load_plan.min_order_id is not none %}
        -- append: only the headers of the new lines' orders can join (a literal bound, so
        -- PostgreSQL plans a small range instead of hashing every order header)
        where order_id >= {{ load_plan.min_order_id }}
    {% endif %}
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

joined as (
    select
        order_lines.order_detail_id as transaction_id,
        order_lines.order_id,
        orders.order_date,
        coalesce({{ date_key('orders.order_date') }}, -1) as date_key,
        coalesce(customers.customer_key, {{ unknown_key() }}) as customer_key,
        coalesce(product_versions.product_key, {{ unknown_key() }}) as product_key,
        coalesce(locations.location_key, {{ unknown_key() }}) as location_key,
        order_lines.quantity,
        order_lines.unit_price,
        order_lines.amount,
        -- the source values the row is built from: the line and its order header
        {{ surrogate_key([
            'order_lines.order_id', 'order_lines.product_id', 'order_lines.quantity',
            'order_lines.unit_price', 'order_lines.amount', 'orders.order_date',
            'orders.customer_id', 'orders.city_id'
        ]) }} as source_hash
    from order_lines
    left join orders
        on order_lines.order_id = orders.order_id
    left join customers
        on orders.customer_id = customers.customer_id
    left join locations
        on orders.city_id = locations.city_id
    -- the product version valid on the order date (windows are half-open and do not overlap)
    left join product_versions
        on
            order_lines.product_id = product_versions.product_id
            and orders.order_date >= product_versions.valid_from
            and orders.order_date < product_versions.valid_to
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
        cast(source_hash as text) as source_hash
    from joined
    {% if is_incremental() and not append_only %}
        -- compare: only lines that are new, changed at the source, or whose keys resolve differently now
        where not exists (
            select 1 from {{ this }} as already_loaded
            where
                already_loaded.transaction_id = joined.transaction_id
                and already_loaded.source_hash = joined.source_hash
                and already_loaded.customer_key = joined.customer_key
                and already_loaded.product_key = joined.product_key
                and already_loaded.location_key = joined.location_key
        )
    {% endif %}
)

select * from final
