{#
    Price history of the product catalogue (SCD type 2).

    Each extract of products.json replaces raw.products; this snapshot compares it with what
    it holds and opens a new version of a product whenever its price, category or name
    changed. dbt_valid_from is when the change was first seen (the snapshot run);
    core.dim_products turns that into the validity window the fact joins on.
#}
{% snapshot snap_products %}

    {{
        config(
            unique_key='product_id',
            strategy='check',
            check_cols=['price', 'product_category_id', 'product_name'],
            dbt_valid_to_current="cast('9999-12-31' as timestamp)",
        )
    }}

    with

    products as (
        select * from {{ ref('stg_products') }}
    ),

    tracked as (
        select
            product_id,
            product_name,
            size,
            price,
            product_category_id
        from products
    )

    select * from tracked

{% endsnapshot %}
