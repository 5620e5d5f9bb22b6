with

customers as (
    select * from {{ ref('stg_customers') }}
),

described as (
    select
        {{ surrogate_key(['customer_id']) }} as customer_key,
        customer_id,
        first_name,
        last_name,
        -- concat_ws skips a missing part instead of nulling the whole name
        concat_ws(' ', first_name, last_name) as full_name,
        gender,
        loaded_at
    from customers
),

-- fact rows whose customer is missing from the extract point here
unknown_member as (
    select
        {{ unknown_key() }} as customer_key,
        cast(-1 as bigint) as customer_id,
        'Unknown' as first_name,
        'Unknown' as last_name,
        'Unknown' as full_name,
        'Unknown' as gender,
        cast('-infinity' as timestamptz) as loaded_at
),

final as (
    select * from described
    union all
    select * from unknown_member
)

select * from final
