{#
    Customers: one row per customer, plus the unknown member.

    Incremental on customer_id: a run writes the customers staging wrote after its high-water
    mark (loaded_at, staging's time of the customer's latest version), and its pre-hook removes
    the customers deleted since (from the extract or in the shop; base_customers keeps them).
#}
-- depends_on: {{ ref('base_customers') }}
{{
    config(
        materialized='incremental',
        unique_key='customer_id',
        incremental_strategy='merge',
        on_schema_change='fail',
        indexes=[
            {'columns': ['customer_id'], 'unique': True},
            {'columns': ['loaded_at']},
        ],
        pre_hook=[
            "{% if is_incremental() %}
            delete from {{ this }}
            where customer_id = any(array(
                select customer_id from {{ ref('base_customers') }}
                where is_deleted and {{ written_after('loaded_at', high_water_mark()) }}
            ))
            {% endif %}",
        ],
    )
}}

with

customers as (
    select * from {{ ref('stg_customers') }}
    {% if is_incremental() %}
        where {{ written_after('loaded_at', high_water_mark()) }}
    {% endif %}
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
    {% if not is_incremental() %}
        union all
        select * from unknown_member
    {% endif %}
)

select * from final
