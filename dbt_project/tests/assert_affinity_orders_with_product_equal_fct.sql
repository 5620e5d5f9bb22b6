-- Reconciliation: in the affinity mart, orders_with_a and orders_with_b are each product's
-- distinct orders in the fact (a product is its product_id across its price versions).
-- Tagged as the business marts: it runs where dm_product_affinity is built (see dbt_project.yml).
{{ config(tags=["whole_history"]) }}

with

affinity as (
    select * from {{ ref('dm_product_affinity') }}
),

transactions as (
    select * from {{ ref('fct_transactions') }}
),

product_versions as (
    select * from {{ ref('dim_products') }}
),

orders_by_product as (
    select
        product_versions.product_id,
        count(distinct transactions.order_id) as orders
    from transactions
    inner join product_versions
        on transactions.product_key = product_versions.product_key
    group by product_versions.product_id
),

final as (
    select
        affinity.product_id_a,
        affinity.product_id_b,
        affinity.orders_with_a,
        affinity.orders_with_b,
        orders_a.orders as fact_orders_a,
        orders_b.orders as fact_orders_b
    from affinity
    left join orders_by_product as orders_a
        on affinity.product_id_a = orders_a.product_id
    left join orders_by_product as orders_b
        on affinity.product_id_b = orders_b.product_id
    where
        affinity.orders_with_a is distinct from orders_a.orders
        or affinity.orders_with_b is distinct from orders_b.orders
)

select * from final
