{#
    Predicate on an extract row of a staging view that combines an extract with the shop's
    mirror: the shop has no row of that id, so the extract's row stands (for the same id the
    shop's row wins, a tombstone too, which leaves both out).

    It reads the mirror's source itself, not the model's CTE of it: a CTE read twice is
    materialized, and a materialized CTE keeps PostgreSQL from scanning the view with parallel
    workers (the fact's load log read the staged lines in 0.9 s instead of 0.5 s at scale 100).
#}
{% macro not_in_shop(shop_table, extract_id) -%}
    not exists (
        select 1 from {{ source('raw_store', shop_table) }} as shop_rows
        where shop_rows.id = {{ extract_id }}
    )
{%- endmacro %}
