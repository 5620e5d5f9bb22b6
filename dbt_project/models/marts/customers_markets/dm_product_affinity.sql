{#
    Product affinity (market basket): one row per pair of products bought in the same order,
    product_id_a < product_id_b. A product is its product_id across its price versions; names,
    types and sizes are those of the current version.

    With N the number of orders in the fact, together the orders holding both, with_a and with_b
    the orders holding each:
      support_pct            together / N * 100
      confidence_a_to_b_pct  together / with_a * 100 (of the orders with a, the share that also has b)
      confidence_b_to_a_pct  together / with_b * 100
      lift                   support(a, b) / (support(a) * support(b)) = together * N / (with_a * with_b):
                             1 = bought together as often as chance predicts, above 1 = more often
    A pair seen in few orders can have a large lift by chance: filter on orders_together.
#}

with

transactions as (
    select * from {{ ref('fct_transactions') }}
),

product_versions as (
    select * from {{ ref('dim_products') }}
),

current_products as (
    select * from product_versions
    where is_current
),

-- each order's distinct products
order_products as (
    select distinct
        transactions.order_id,
        product_versions.product_id
    from transactions
    inner join product_versions
        on transactions.product_key = product_versions.product_key
),

order_count as (
    select count(distinct order_id) as total_orders
    from order_products
),

product_orders as (
    select
        product_id,
        count(*) as orders_with_product
    from order_products
    group by product_id
),

pairs as (
    select
        product_a.product_id as product_id_a,
        product_b.product_id as product_id_b,
        count(*) as orders_together
    from order_products as product_a
    inner join order_products as product_b
        on
            product_a.order_id = product_b.order_id
            and product_a.product_id < product_b.product_id
    group by product_a.product_id, product_b.product_id
),

measured as (
    select
        pairs.product_id_a,
        pairs.product_id_b,
        pairs.orders_together,
        orders_a.orders_with_product as orders_with_a,
        orders_b.orders_with_product as orders_with_b,
        order_count.total_orders
    from pairs
    inner join product_orders as orders_a
        on pairs.product_id_a = orders_a.product_id
    inner join product_orders as orders_b
        on pairs.product_id_b = orders_b.product_id
    cross join order_count
),

final as (
    select
        cast(measured.product_id_a as integer) as product_id_a,
        cast(product_a.product_name as text) as product_name_a,
        cast(product_a.product_type as text) as product_type_a,
        cast(product_a.size as text) as size_a,
        cast(measured.product_id_b as integer) as product_id_b,
        cast(product_b.product_name as text) as product_name_b,
        cast(product_b.product_type as text) as product_type_b,
        cast(product_b.size as text) as size_b,
        cast(measured.orders_together as bigint) as orders_together,
        cast(measured.orders_with_a as bigint) as orders_with_a,
        cast(measured.orders_with_b as bigint) as orders_with_b,
        cast(round(100.0 * measured.orders_together / measured.total_orders, 2) as numeric(5, 2)) as support_pct,
        cast(
            round(100.0 * measured.orders_together / measured.orders_with_a, 2) as numeric(5, 2)
        ) as confidence_a_to_b_pct,
        cast(
            round(100.0 * measured.orders_together / measured.orders_with_b, 2) as numeric(5, 2)
        ) as confidence_b_to_a_pct,
        cast(
            round(
                1.0 * measured.orders_together * measured.total_orders
                / (measured.orders_with_a * measured.orders_with_b),
                4
            )
            as numeric(12, 4)
        ) as lift
    from measured
    left join current_products as product_a
        on measured.product_id_a = product_a.product_id
    left join current_products as product_b
        on measured.product_id_b = product_b.product_id
)

select * from final
