-- SCD2 integrity: each product's versions tile time without gaps or overlaps, starting at
-- 1900-01-01 and ending at 9999-12-31, with exactly one current version at the end.
with

product_versions as (
    select * from {{ ref('dim_products') }}
),

sequenced as (
    select
        product_id,
        version_number,
        valid_from,
        valid_to,
        is_current,
        lead(valid_from) over (partition by product_id order by valid_from) as next_valid_from
    from product_versions
),

final as (
    select * from sequenced
    where
        valid_from >= valid_to
        or (version_number = 1 and valid_from <> cast('1900-01-01' as timestamp))
        or (next_valid_from is not null and next_valid_from <> valid_to)
        or (next_valid_from is null and (valid_to <> cast('9999-12-31' as timestamp) or not is_current))
        or (next_valid_from is not null and is_current)
)

select * from final
