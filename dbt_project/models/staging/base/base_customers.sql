{#
    Every customer id the extract or the shop has written, in its most recent version.

    Two places write customers: the customers extract (raw.customers) and the shop, which
    registers new ones (raw_store.shop_customer, mirrored by the stream). For one id the most recent change wins:
    an extract row's load time (_loaded_at) against the shop's commit time (_store_committed_at;
    the shop's updated_at for rows the stream copied rather than streamed). A deletion is a change
    at its own time (a customer missing from a newer extract, a delete in the shop), so is_deleted
    keeps deleted customers here; stg_customers leaves them out, and fct_transactions re-keys
    the lines of a customer who appeared, changed or went.

    Incremental: only ids that either side changed since the last run are resolved again, and a
    version already stored (same side, same change time) is not rewritten.
#}
{{
    config(
        materialized='incremental',
        unique_key='customer_id',
        incremental_strategy='merge',
        indexes=[
            {'columns': ['customer_id'], 'unique': True},
            {'columns': ['loaded_at']},
        ],
    )
}}

with

extract_customers as (
    select * from {{ source('raw', 'customers') }}
),

shop_customers as (
    select * from {{ source('raw_store', 'shop_customer') }}
),

{% if is_incremental() %}
    -- ids written on either side since the last run (each source read through its own index on
    -- the arrival time, not through the import CTEs above, which are each read once)
    changed_ids as (
        select customer_id from {{ source('raw', 'customers') }}
        where {{ written_after('_loaded_at', source_high_water_mark()) }}
        union
        select id from {{ source('raw_store', 'shop_customer') }}
        where {{ written_after('_synced_at', source_high_water_mark()) }}
    ),
{% endif %}

extract_versions as (
    select
        customer_id,
        first_name,
        last_name,
        gender,
        _deleted_at is not null as is_deleted,
        'extract' as source_name,
        _loaded_at as changed_at
    from extract_customers
    {% if is_incremental() %}
        -- any(array(...)): PostgreSQL looks each id up in the key's index, however many
        -- rows it guesses the mark lets through (see written_after in macros/incremental.sql)
        where customer_id = any(array(select customer_id from changed_ids))
    {% endif %}
),

shop_versions as (
    select
        id as customer_id,
        first_name,
        last_name,
        gender,
        _deleted_at is not null as is_deleted,
        'shop' as source_name,
        coalesce(_store_committed_at, updated_at) as changed_at
    from shop_customers
    {% if is_incremental() %}
        where id = any(array(select customer_id from changed_ids))
    {% endif %}
),

latest_versions as (
    {{ latest_version('extract_versions', 'shop_versions', 'customer_id') }}
),

final as (
    select
        latest_versions.*,
        now() as loaded_at
    from latest_versions
    {% if is_incremental() %}
        where not exists (
            select 1 from {{ this }} as stored
            where
                stored.customer_id = latest_versions.customer_id
                and stored.source_name = latest_versions.source_name
                and stored.changed_at = latest_versions.changed_at
                and stored.is_deleted = latest_versions.is_deleted
        )
    {% endif %}
)

select * from final
