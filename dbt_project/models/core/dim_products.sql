{#
    Products with their history (SCD type 2), one row per product version, from the snapshot.

    Validity: a version is valid from valid_from (inclusive) to valid_to (exclusive).
    The snapshot's dbt_valid_from is when a version was first seen; for a product's first
    version that is merely when the warehouse first loaded the catalogue, so it is
    stretched back to 1900-01-01: every order placed before a change was observed sells at
    the first known version. Later versions start at their dbt_valid_from, and the current
    version ends at 9999-12-31. fct_transactions picks the version whose window holds the
    order date.
#}
with

snapshot_versions as (
    select * from {{ ref('snap_products') }}
),

categories as (
    select * from {{ ref('stg_product_categories') }}
),

versioned as (
    select
        product_id,
        product_name,
        size,
        price,
        product_category_id,
        dbt_valid_from,
        dbt_updated_at,
        row_number() over (partition by product_id order by dbt_valid_from) as version_number,
        coalesce(dbt_valid_to, cast('9999-12-31' as timestamp)) as valid_to
    from snapshot_versions
),

windowed as (
    select
        *,
        case
            when version_number = 1 then cast('1900-01-01' as timestamp)
            else dbt_valid_from
        end as valid_from
    from versioned
),

described as (
    select
        -- the first version keeps its key if the snapshot is ever rebuilt (valid_from is fixed)
        {{ surrogate_key(['windowed.product_id', 'windowed.valid_from']) }} as product_key,
        windowed.product_id,
        windowed.product_name,
        -- '<Type> <Color>': the colour is the last word, the type everything before it
        case
            when strpos(windowed.product_name, ' ') > 0
                then regexp_replace(windowed.product_name, '\s+\S+$', '')
            else windowed.product_name
        end as product_type,
        case
            when strpos(windowed.product_name, ' ') > 0
                then substring(windowed.product_name from '(\S+)$')
        end as color,
        windowed.size,
        windowed.price,
        windowed.product_category_id,
        coalesce(categories.product_category_name, 'Unknown') as product_category_name,
        windowed.version_number,
        windowed.valid_from,
        windowed.valid_to,
        windowed.valid_to = cast('9999-12-31' as timestamp) as is_current,
        -- when the snapshot wrote this version: fct_transactions re-keys the lines it now covers
        cast(windowed.dbt_updated_at as timestamptz) as loaded_at
    from windowed
    left join categories
        on windowed.product_category_id = categories.product_category_id
),

-- fact rows whose product is missing from the extract point here
unknown_member as (
    select
        {{ unknown_key() }} as product_key,
        -1 as product_id,
        'Unknown' as product_name,
        'Unknown' as product_type,
        'Unknown' as color,
        'Unknown' as size,
        cast(null as bigint) as price,
        -1 as product_category_id,
        'Unknown' as product_category_name,
        1 as version_number,
        cast('1900-01-01' as timestamp) as valid_from,
        cast('9999-12-31' as timestamp) as valid_to,
        true as is_current,
        cast('-infinity' as timestamptz) as loaded_at
),

final as (
    select * from described
    union all
    select * from unknown_member
)

select * from final
