{#
    Monthly revenue: one row per calendar month with sales.

    revenue_mom_growth_pct compares with the previous calendar month. It is null for the
    first month and for a month whose previous calendar month had no sales (growth from
    nothing is undefined), rather than silently comparing with an older month.

    Incremental. When every fct_transactions load since the last build only appended lines of
    new orders (macro fct_transactions_changes_since), the appended lines are added to the
    stored months: orders, quantities and revenue add up (no appended order was counted
    before); a customer adds to a month only if none of the earlier lines of that month is
    theirs, which one pass over the earlier lines settles. Averages and growth are then
    recomputed for every month and the rows replaced. Any other change to the fact rebuilds
    every month from the whole fact.
#}
-- depends_on: {{ ref('fct_transactions_loads') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='replace',
        on_schema_change='append_new_columns',
    )
}}
{%- set plan = fct_transactions_changes_since(this) if is_incremental() else {'mode': 'full'} %}
{%- set add_to_previous = plan.mode == 'delta' %}
{%- set after_line_id = plan.after_line_id if add_to_previous and plan.after_line_id is not none else none %}

with

-- the lines to add: all of them on a full build, else those appended since the last build
-- (each import CTE of the fact is read once, so PostgreSQL inlines it and can use the key's index)
new_transactions as (
    select * from {{ ref('fct_transactions') }}
    {% if add_to_previous %}
        where {{ 'transaction_id > ' ~ after_line_id if after_line_id is not none else 'false' }}
    {% endif %}
),

{% if after_line_id is not none %}
    -- the lines already counted in the stored months
    earlier_transactions as (
        select * from {{ ref('fct_transactions') }}
        where transaction_id <= {{ after_line_id }}
    ),
{% endif %}

dates as (
    select * from {{ ref('dim_dates') }}
),

previous_build as (
    {% if add_to_previous %}
        select * from {{ this }}
    {% else %}
        select
            cast(null as date) as month_start,
            cast(null as integer) as year,
            cast(null as integer) as month,
            cast(null as text) as month_name,
            cast(null as bigint) as total_orders,
            cast(null as bigint) as total_customers,
            cast(null as bigint) as total_quantity,
            cast(null as bigint) as revenue
        where false
    {% endif %}
),

new_lines as (
    select
        dates.month_start,
        dates.year,
        dates.month,
        dates.month_name,
        new_transactions.order_id,
        new_transactions.customer_key,
        new_transactions.quantity,
        new_transactions.amount
    from new_transactions
    inner join dates
        on new_transactions.date_key = dates.date_key
    -- lines without an order date belong to no month (assert_revenue_by_months_equals_fct reports them)
    where dates.month_start is not null
),

{% if after_line_id is not none %}
    -- each new line's customer and month (date_key / 100 = yyyymm)
    new_customer_months as (
        select distinct
            cast(to_char(new_lines.month_start, 'YYYYMM') as integer) as month_key,
            new_lines.customer_key
        from new_lines
    ),

    -- those who already bought in that month (an earlier line), looked up through the fact's
    -- index on (customer_key, date_key) rather than read from every earlier line
    returning_customers as (
        select
            new_customer_months.month_key,
            new_customer_months.customer_key
        from new_customer_months
        where exists (
            select 1 from earlier_transactions
            where
                earlier_transactions.customer_key = new_customer_months.customer_key
                and earlier_transactions.date_key between new_customer_months.month_key * 100 + 1
                and new_customer_months.month_key * 100 + 31
        )
    ),
{% endif %}

new_monthly as (
    select
        new_lines.month_start,
        new_lines.year,
        new_lines.month,
        new_lines.month_name,
        count(distinct new_lines.order_id) as total_orders,
        {% if after_line_id is not none %}
            count(distinct new_lines.customer_key) filter (
                where returning_customers.customer_key is null
            ) as total_customers,
        {% else %}
            count(distinct new_lines.customer_key) as total_customers,
        {% endif %}
        sum(new_lines.quantity) as total_quantity,
        sum(new_lines.amount) as revenue
    from new_lines
    {% if after_line_id is not none %}
        left join returning_customers
            on
                cast(to_char(new_lines.month_start, 'YYYYMM') as integer) = returning_customers.month_key
                and new_lines.customer_key = returning_customers.customer_key
    {% endif %}
    group by new_lines.month_start, new_lines.year, new_lines.month, new_lines.month_name
),

-- the stored months plus the new lines' (no stored months on a full build)
monthly as (
    select
        coalesce(new_monthly.month_start, previous_build.month_start) as month_start,
        coalesce(new_monthly.year, previous_build.year) as year,
        coalesce(new_monthly.month, previous_build.month) as month,
        coalesce(new_monthly.month_name, previous_build.month_name) as month_name,
        coalesce(previous_build.total_orders, 0) + coalesce(new_monthly.total_orders, 0) as total_orders,
        coalesce(previous_build.total_customers, 0) + coalesce(new_monthly.total_customers, 0) as total_customers,
        coalesce(previous_build.total_quantity, 0) + coalesce(new_monthly.total_quantity, 0) as total_quantity,
        coalesce(previous_build.revenue, 0) + coalesce(new_monthly.revenue, 0) as revenue
    from new_monthly
    full outer join previous_build
        on new_monthly.month_start = previous_build.month_start
),

with_previous as (
    select
        *,
        lag(month_start) over (order by month_start) as previous_month_start,
        lag(revenue) over (order by month_start) as previous_revenue
    from monthly
),

final as (
    select
        cast(month_start as date) as month_start,
        cast(year as integer) as year,
        cast(month as integer) as month,
        cast(month_name as text) as month_name,
        cast(total_orders as bigint) as total_orders,
        cast(total_customers as bigint) as total_customers,
        cast(total_quantity as bigint) as total_quantity,
        cast(revenue as bigint) as revenue,
        cast(round(revenue / nullif(total_orders, 0), 2) as numeric(18, 2)) as avg_order_value,
        cast(
            case
                when previous_month_start = cast(month_start - interval '1 month' as date)
                    then round(100.0 * (revenue - previous_revenue) / nullif(previous_revenue, 0), 2)
            end
            as numeric(12, 2)
        ) as revenue_mom_growth_pct,
        {{ fct_transactions_last_load() }} as fact_loaded_at
    from with_previous
)

select * from final
