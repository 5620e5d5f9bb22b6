{#
    A surrogate key: md5 of the natural key column(s), as 32 hex characters of text.

    Nulls are replaced by a token before hashing, and values are separated by '|', so
    (null, 'a') and ('a', null) do not collide. The same macro hashes whole rows for the
    change detection of fct_transactions.
#}
{% macro surrogate_key(columns) -%}
    md5(
        {%- for column in columns %}
        coalesce(cast({{ column }} as text), '_null_'){% if not loop.last %} || '|' ||{% endif %}
        {%- endfor %}
    )
{%- endmacro %}


{#
    The key of each dimension's "unknown" member: a fact row whose reference is missing
    points at it, so inner joins never lose fact rows.
#}
{% macro unknown_key() -%}
    '-1'
{%- endmacro %}


{# The integer yyyymmdd key of dim_dates, from a date or timestamp expression. #}
{% macro date_key(expression) -%}
    cast(to_char({{ expression }}, 'YYYYMMDD') as integer)
{%- endmacro %}
