{#
    Generic test: every row of the model satisfies `expression`; rows where it is false or
    null fail. Usable on a model or on a column (the column is then only documentation:
    the expression names what it checks). Narrow the rows with dbt's own `config: where`.
#}
{% test expression_is_true(model, expression, column_name=none) %}
    select *
    from {{ model }}
    where not coalesce(({{ expression }}), false)
{% endtest %}
