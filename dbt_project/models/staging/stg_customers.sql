{#
    Customers, one row per customer id, from the extract and the shop (base_customers: for one id
    the most recent change wins), deleted customers left out.
#}
with

customers as (
    select * from {{ ref('base_customers') }}
),

live as (
    select
        customer_id,
        trim(first_name) as first_name,
        trim(last_name) as last_name,
        -- 'male ', 'MALE' -> 'Male'
        initcap(trim(gender)) as gender,
        changed_at,
        loaded_at
    from customers
    where not is_deleted
)

select * from live
