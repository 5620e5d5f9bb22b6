{#
    dbt's `where` config of generic tests, with one placeholder resolved when the test runs
    (a config is rendered at parse time, too early to read the load log):

        where: "__fct_transactions_unchecked_rows__"

    limits a test on fct_transactions to the rows appended since its last whole-table check
    (macro fct_transactions_unchecked_rows). Any other `where` works as in dbt.
#}
{% macro get_where_subquery(relation) -%}
    {% set where = config.get('where', '') %}
    {% if where %}
        {% if '__fct_transactions_unchecked_rows__' in where %}
            {% set where = where | replace('__fct_transactions_unchecked_rows__', fct_transactions_unchecked_rows()) %}
        {% endif %}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {% do return(filtered) %}
    {%- else -%}
        {% do return(relation) %}
    {%- endif -%}
{%- endmacro %}
