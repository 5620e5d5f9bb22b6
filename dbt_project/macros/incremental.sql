{#
    Helpers of the incremental models: what changed since their last run, and which version of
    an id is the latest when two places write it.
#}

{#
    The arrival time (in raw) after which a base model reads its sources again: when its last run
    that wrote a row started (loaded_at), less `source_lookback`. Every row that had arrived by then
    was read by that run, except the rows of a load or stream transaction still open at the time:
    they carry the time their transaction wrote them, and the lookback reads them again (a version
    already stored is not rewritten).
#}
{% macro source_high_water_mark() -%}
    (
        select coalesce(max(loaded_at), '-infinity') - cast({{ "'" ~ var('source_lookback') ~ "'" }} as interval)
        from {{ this }}
    )
{%- endmacro %}


{#
    One row per `key`: the version with the latest changed_at of the union of two relations with
    the same columns (the shop's on a tie, source_name 'shop').
#}
{% macro latest_version(first, second, key) -%}
    select distinct on ({{ key }}) versions.*
    from (
        select * from {{ first }}
        union all
        select * from {{ second }}
    ) as versions
    order by {{ key }}, changed_at desc, source_name = 'shop' desc
{%- endmacro %}


{#
    The high-water mark of a model built from dbt's own models: when its last run wrote a row
    (its loaded_at is now() of that run). Inputs written after it are what changed since.
#}
{% macro high_water_mark() -%}
    (select coalesce(max(loaded_at), '-infinity') from {{ this }})
{%- endmacro %}


{#
    The rows whose `column` (when they were written) is after `mark`, a high-water mark above.

    The upper bound changes no result (nothing a run can read was written after it began), but
    PostgreSQL, which cannot know the mark's value when it plans, estimates `column > mark` alone as
    a third of the table and scans all of it; with both bounds it estimates a narrow range and reads
    the few new rows through the column's index.
#}
{% macro written_after(column, mark) -%}
    {{ column }} > {{ mark }} and {{ column }} <= now()
{%- endmacro %}


{#
    The ids of the orders whose lines left the fact since the model's high-water mark: a line
    deleted (from an extract or in the shop), or the order deleted or cancelled. The base models
    keep such orders and lines, so a mart finds in them the months and cities that lost sales.
#}
{% macro orders_with_removed_lines() -%}
    select order_id from {{ ref('base_order_details') }}
    where is_deleted and {{ written_after('loaded_at', high_water_mark()) }}
    union
    select order_id from {{ ref('base_orders') }}
    where
        (is_deleted or order_status = 'cancelled')
        and {{ written_after('loaded_at', high_water_mark()) }}
{%- endmacro %}


{#
    The condition on `lines` (the fact) that selects the lines of one (city, product) pair: the
    city's location_key and the keys of every version of the product, so that PostgreSQL reads
    them from the fact's (location_key, product_key, ...) index, one pair at a time.
#}
{% macro lines_of_pair(lines, location_key, product_id) -%}
    {{ lines }}.location_key = {{ location_key }}
    and {{ lines }}.product_key = any(array(
        select versions.product_key from {{ ref('dim_products') }} as versions
        where versions.product_id = {{ product_id }}
    ))
{%- endmacro %}
