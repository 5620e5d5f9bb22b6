{# Whole calendar months from one month to a later one (2022-01 to 2022-03: 2), as an integer. #}
{% macro months_between(from_month, to_month) -%}
    cast(
        (extract(year from {{ to_month }}) - extract(year from {{ from_month }})) * 12
        + extract(month from {{ to_month }}) - extract(month from {{ from_month }})
        as integer
    )
{%- endmacro %}
