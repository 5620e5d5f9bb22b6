{#
    Every order id the extract or the shop has written, in its most recent version.

    Two places write order headers: the orders extract (raw.orders) and the shop
    (raw_store.shop_order, mirrored by the stream). For one id the most recent change wins:
    an extract row's load time (_loaded_at) against the shop's commit time (_store_committed_at;
    the shop's updated_at for rows the stream copied rather than streamed). A deletion is a change
    at its own time (an order missing from a newer extract, a delete in the shop), so is_deleted
    keeps deleted orders here; stg_orders leaves them out, fct_transactions removes their lines.

    Incremental: only ids that either side changed since the last run are resolved again, and a
    version already stored (same side, same change time) is not rewritten. Indexed by the keys the
    fact looks orders up by, and by order_date (dim_dates reads its first and last one).
#}
{{
    config(
        materialized='incremental',
        unique_key='order_id',
        incremental_strategy='merge',
        indexes=[
            {'columns': ['order_id'], 'unique': True},
            {'columns': ['customer_id']},
            {'columns': ['city_id']},
            {'columns': ['order_date']},
            {'columns': ['loaded_at']},
        ],
    )
}}

with

extract_orders as (
    select * from {{ source('raw', 'orders') }}
),

shop_orders as (
    select * from {{ source('raw_store', 'shop_order') }}
),

{% if is_incremental() %}
    -- ids written on either side since the last run (each source read through its own index on
    -- the arrival time, not through the import CTEs above, which are each read once)
    changed_ids as (
        select order_id from {{ source('raw', 'orders') }}
        where {{ written_after('_loaded_at', source_high_water_mark()) }}
        union
        select id from {{ source('raw_store', 'shop_order') }}
        where {{ written_after('_synced_at', source_high_water_mark()) }}
    ),
{% endif %}

extract_versions as (
    select
        order_id,
        order_date,
        customer_id,
        province_id,
        city_id,
        -- the extract holds orders that were delivered
        'delivered' as order_status,
        _deleted_at is not null as is_deleted,
        'extract' as source_name,
        _loaded_at as changed_at
    from extract_orders
    {% if is_incremental() %}
        -- any(array(...)): PostgreSQL looks each id up in the key's index, however many
        -- rows it guesses the mark lets through (see written_after in macros/incremental.sql)
        where order_id = any(array(select order_id from changed_ids))
    {% endif %}
),

shop_versions as (
    select
        id as order_id,
        -- the extract's dates are the shop's local time without a zone: the same here
        created_at at time zone 'Asia/Jakarta' as order_date,
        customer_id,
        province_id,
        city_id,
        lower(trim(status)) as order_status,
        _deleted_at is not null as is_deleted,
        'shop' as source_name,
        coalesce(_store_committed_at, updated_at) as changed_at
    from shop_orders
    {% if is_incremental() %}
        where id = any(array(select order_id from changed_ids))
    {% endif %}
),

latest_versions as (
    {{ latest_version('extract_versions', 'shop_versions', 'order_id') }}
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
                stored.order_id = latest_versions.order_id
                and stored.source_name = latest_versions.source_name
                and stored.changed_at = latest_versions.changed_at
                and stored.is_deleted = latest_versions.is_deleted
        )
    {% endif %}
)

select * from final
