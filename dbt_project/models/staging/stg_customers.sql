{#
    Customers from the customers extract and from the shop's own table as mirrored by the stream
    (the shop registers new customers). The shop's row wins for the same customer id; a customer
    deleted in the shop (tombstone) is left out, their extract row too.
#}
with

extract_customers as (
    select * from {{ source('raw', 'customers') }}
),

shop_customers as (
    select * from {{ source('raw_store', 'shop_customer') }}
),

extract_renamed as (
    select
        customer_id,
        trim(first_name) as first_name,
        trim(last_name) as last_name,
        -- 'male ', 'MALE' -> 'Male'
        initcap(trim(gender)) as gender,
        _loaded_at as loaded_at
    from extract_customers
    where {{ not_in_shop('shop_customer', 'extract_customers.customer_id') }}
),

shop_renamed as (
    select
        id as customer_id,
        trim(first_name) as first_name,
        trim(last_name) as last_name,
        initcap(trim(gender)) as gender,
        _synced_at as loaded_at
    from shop_customers
    where _deleted_at is null
),

combined as (
    select * from extract_renamed
    union all
    select * from shop_renamed
)

select * from combined
